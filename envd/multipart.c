/*
 * multipart/form-data (RFC 7578) over a complete body, as h2o delivers request bodies whole.
 *
 * The parser never copies part data: each part points into the body. It accepts CRLF line ends
 * (and bare LF, which some clients send), ignores a preamble and an epilogue, and fails closed on
 * anything else: a missing closing delimiter is "truncated" (SG_EPROTO), part headers are bounded
 * (8 KB per part), the number of parts is bounded by the caller. Filenames in
 * Content-Disposition are unquoted and have the %22 / %0A / %0D escapes that browsers and
 * undici (Node's fetch) use decoded; a filename that would not fit is an error, not a cut.
 */
#include <string.h>
#include <strings.h>
#include "common/common.h"
#include "envd/envd.h"

#define PART_HEADERS_MAX 8192

static const uint8_t *find(const uint8_t *hay, size_t hlen, const uint8_t *needle, size_t nlen)
{
    if (nlen == 0 || hlen < nlen)
        return NULL;
    return memmem(hay, hlen, needle, nlen);
}

int sg_envd_multipart_boundary(const char *ctype, size_t len, const char **b, size_t *blen)
{
    static const char mt[] = "multipart/form-data";
    if (len < sizeof(mt) - 1 || strncasecmp(ctype, mt, sizeof(mt) - 1) != 0)
        return SG_EINVAL;
    size_t i = sizeof(mt) - 1;
    while (i < len) {
        while (i < len && (ctype[i] == ';' || ctype[i] == ' ' || ctype[i] == '\t'))
            i++;
        size_t ks = i;
        while (i < len && ctype[i] != '=' && ctype[i] != ';')
            i++;
        size_t klen = i - ks;
        if (i >= len || ctype[i] != '=')
            continue;
        i++;
        const char *v;
        size_t vlen;
        if (i < len && ctype[i] == '"') {
            v = ctype + ++i;
            while (i < len && ctype[i] != '"')
                i++;
            if (i >= len)
                return SG_EINVAL;
            vlen = (size_t)(ctype + i - v);
            i++;
        } else {
            v = ctype + i;
            while (i < len && ctype[i] != ';' && ctype[i] != ' ')
                i++;
            vlen = (size_t)(ctype + i - v);
        }
        if (klen == 8 && strncasecmp(ctype + ks, "boundary", 8) == 0) {
            if (vlen == 0 || vlen > 70)
                return SG_EINVAL;
            *b = v;
            *blen = vlen;
            return 0;
        }
    }
    return SG_EINVAL;
}

/* Reads a parameter (name="value" or name=value) of a Content-Disposition header value. */
static int disposition_param(const char *h, size_t hlen, const char *key, const char **v,
                             size_t *vlen, bool *quoted)
{
    size_t klen = strlen(key);
    size_t i = 0;
    while (i < hlen) {
        /* advance to the start of a parameter */
        while (i < hlen && h[i] != ';') {
            if (h[i] == '"') { /* skip quoted strings so "a;filename=x" inside a value is inert */
                i++;
                while (i < hlen && h[i] != '"') {
                    if (h[i] == '\\' && i + 1 < hlen)
                        i++;
                    i++;
                }
            }
            i++;
        }
        if (i >= hlen)
            break;
        i++;
        while (i < hlen && (h[i] == ' ' || h[i] == '\t'))
            i++;
        if (i + klen < hlen && strncasecmp(h + i, key, klen) == 0 && h[i + klen] == '=') {
            i += klen + 1;
            if (i < hlen && h[i] == '"') {
                size_t s = ++i;
                while (i < hlen && h[i] != '"') {
                    if (h[i] == '\\' && i + 1 < hlen)
                        i++;
                    i++;
                }
                if (i >= hlen)
                    return SG_EPROTO;
                *v = h + s;
                *vlen = i - s;
                *quoted = true;
            } else {
                size_t s = i;
                while (i < hlen && h[i] != ';' && h[i] != ' ')
                    i++;
                *v = h + s;
                *vlen = i - s;
                *quoted = false;
            }
            return 0;
        }
    }
    return SG_ENOTFOUND;
}

static int decode_filename(const char *v, size_t vlen, bool quoted, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < vlen; i++) {
        char c = v[i];
        if (quoted && c == '\\' && i + 1 < vlen) {
            c = v[++i];
        } else if (c == '%' && i + 2 < vlen) {
            if (v[i + 1] == '2' && v[i + 2] == '2') { c = '"'; i += 2; }
            else if (v[i + 1] == '0' && (v[i + 2] == 'A' || v[i + 2] == 'a')) { c = '\n'; i += 2; }
            else if (v[i + 1] == '0' && (v[i + 2] == 'D' || v[i + 2] == 'd')) { c = '\r'; i += 2; }
        }
        if (c == '\0' || o + 1 >= cap)
            return SG_EPROTO;
        out[o++] = c;
    }
    out[o] = '\0';
    return 0;
}

/* Parses the header block of one part: hdr[0..hlen) holds lines without the blank line. */
static int parse_part_headers(const char *hdr, size_t hlen, sg_envd_part_t *p)
{
    size_t i = 0;
    bool have_disposition = false;
    while (i < hlen) {
        size_t e = i;
        while (e < hlen && hdr[e] != '\n')
            e++;
        size_t le = e;
        if (le > i && hdr[le - 1] == '\r')
            le--;
        const char *line = hdr + i;
        size_t llen = le - i;
        const char *colon = memchr(line, ':', llen);
        if (colon == NULL)
            return SG_EPROTO;
        size_t nlen = (size_t)(colon - line);
        const char *val = colon + 1;
        size_t vlen = llen - nlen - 1;
        while (vlen > 0 && (*val == ' ' || *val == '\t')) {
            val++;
            vlen--;
        }
        if (nlen == 19 && strncasecmp(line, "content-disposition", 19) == 0) {
            if (vlen < 9 || strncasecmp(val, "form-data", 9) != 0)
                return SG_EPROTO;
            have_disposition = true;
            const char *v;
            size_t l;
            bool q;
            int r = disposition_param(val, vlen, "name", &v, &l, &q);
            if (r == SG_EPROTO)
                return r;
            if (r == 0) {
                p->name = v;
                p->name_len = l;
            }
            r = disposition_param(val, vlen, "filename", &v, &l, &q);
            if (r == SG_EPROTO)
                return r;
            if (r == 0 && decode_filename(v, l, q, p->filename, sizeof(p->filename)) != 0)
                return SG_EPROTO;
        } else if (nlen == 12 && strncasecmp(line, "content-type", 12) == 0) {
            p->content_type = val;
            p->content_type_len = vlen;
        }
        i = e + 1;
    }
    return have_disposition ? 0 : SG_EPROTO;
}

int sg_envd_multipart_parse(const uint8_t *body, size_t len, const char *boundary, size_t blen,
                            sg_envd_part_t *parts, size_t max_parts, size_t *nparts)
{
    uint8_t delim[80];
    *nparts = 0;
    if (blen == 0 || blen > 70)
        return SG_EINVAL;
    /* delimiter = "--" boundary; every delimiter but the first is preceded by a line break */
    delim[0] = '-';
    delim[1] = '-';
    memcpy(delim + 2, boundary, blen);
    size_t dlen = blen + 2;

    const uint8_t *p = body, *end = body + len;
    const uint8_t *d;
    if (len >= dlen && memcmp(body, delim, dlen) == 0)
        d = body;
    else {
        /* skip the preamble: the first delimiter must start a line */
        uint8_t nd[82];
        nd[0] = '\n';
        memcpy(nd + 1, delim, dlen);
        d = find(body, len, nd, dlen + 1);
        if (d == NULL)
            return SG_EPROTO;
        d++;
    }
    p = d + dlen;
    for (;;) {
        /* after a delimiter: "--" closes, else optional whitespace then a line break */
        if (end - p >= 2 && p[0] == '-' && p[1] == '-')
            return *nparts > 0 ? 0 : SG_EPROTO;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        if (p < end && *p == '\r')
            p++;
        if (p >= end || *p != '\n')
            return SG_EPROTO;
        p++;
        /* headers end at an empty line */
        const uint8_t *hend = NULL;
        size_t hskip = 0;
        size_t window = (size_t)(end - p) < PART_HEADERS_MAX + 4 ? (size_t)(end - p)
                                                                : PART_HEADERS_MAX + 4;
        if (window >= 1 && p[0] == '\n') { hend = p; hskip = 1; }
        else if (window >= 2 && p[0] == '\r' && p[1] == '\n') { hend = p; hskip = 2; }
        else {
            const uint8_t *a = find(p, window, (const uint8_t *)"\r\n\r\n", 4);
            const uint8_t *b = find(p, window, (const uint8_t *)"\n\n", 2);
            if (a && (!b || a < b)) { hend = a; hskip = 4; }
            else if (b) { hend = b; hskip = 2; }
            if (hend != NULL && (size_t)(hend - p) > PART_HEADERS_MAX)
                return SG_ETOOBIG;
        }
        if (hend == NULL)
            return window > PART_HEADERS_MAX ? SG_ETOOBIG : SG_EPROTO;
        if (*nparts >= max_parts)
            return SG_ETOOBIG;
        sg_envd_part_t *part = &parts[*nparts];
        memset(part, 0, sizeof(*part));
        if (hend == p)
            return SG_EPROTO; /* a part without Content-Disposition */
        if (parse_part_headers((const char *)p, (size_t)(hend - p), part) != 0)
            return SG_EPROTO;
        const uint8_t *data = hend + hskip;
        /* data runs to the next "\n--boundary" (with an optional \r before the \n) */
        uint8_t nd[82];
        nd[0] = '\n';
        memcpy(nd + 1, delim, dlen);
        const uint8_t *next = find(data, (size_t)(end - data), nd, dlen + 1);
        if (next == NULL)
            return SG_EPROTO;
        const uint8_t *dend = next;
        if (dend > data && dend[-1] == '\r')
            dend--;
        part->data = data;
        part->len = (size_t)(dend - data);
        (*nparts)++;
        p = next + 1 + dlen;
    }
}
