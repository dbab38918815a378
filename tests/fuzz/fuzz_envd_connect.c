/*
 * Fuzz target: bytes as the body of a Connect streaming request, as envd reads it: one envelope,
 * then its message as JSON, then the StartRequest / selector / signal mappings. Also feeds the
 * raw bytes to the unary path (JSON only). Checks beyond "no crash, no leak": a decoded envelope
 * lies inside the input, and a parsed StartRequest has a NULL-terminated, bounded argv.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "common/common.h"
#include "envd/envd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void mappings(const char *msg, size_t len)
{
    json_error_t e;
    json_t *j = json_loadb(msg, len, JSON_REJECT_DUPLICATES, &e);
    if (j == NULL)
        return;
    static sg_envd_start_t s;
    char err[256];
    if (sg_envd_parse_start(j, &s, err, sizeof(err)) == 0) {
        if (s.nargs > SG_ENVD_MAX_ARGS || s.args[s.nargs] != NULL || s.cmd == NULL)
            abort();
    } else if (memchr(err, '\0', sizeof(err)) == NULL) {
        abort();
    }
    uint32_t pid;
    const char *tag;
    int sig;
    sg_envd_parse_selector(sg_envd_field(j, "process", NULL), &pid, &tag);
    sg_envd_parse_signal(sg_envd_field(j, "signal", NULL), &sig);
    json_t *p = sg_envd_field(j, "path", NULL);
    if (json_is_string(p)) {
        char out[4096];
        if (sg_envd_resolve_path(json_string_value(p), "/home/user", out, sizeof(out)) == 0 &&
            out[0] != '/')
            abort();
    }
    json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t flags;
    const uint8_t *msg;
    size_t len, consumed;
    if (sg_envd_envelope_decode(data, size, 1 << 20, &flags, &msg, &len, &consumed) == 0) {
        if (consumed > size || msg < data || msg + len > data + size)
            abort();
        mappings((const char *)msg, len);
    }
    mappings((const char *)data, size);
    return 0;
}
