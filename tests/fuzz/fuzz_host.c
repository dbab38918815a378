/*
 * Fuzz target: the edge's Host / e2b-sandbox-* routing (routing/routing.h). The input is split at
 * the first two '\n' into host, e2b-sandbox-id and e2b-sandbox-port (a missing part is an absent
 * header), each passed by length only: the buffer is copied to an exact-size heap block so ASan
 * flags any read past a length. Beyond "no crash": a sandbox route always carries a valid id and a
 * port in 1..65535, an error always a message, the API neither; and the result is deterministic.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "routing/routing.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1);
    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    const char *part[3] = {NULL, NULL, NULL};
    size_t len[3] = {0, 0, 0};
    size_t start = 0;
    int k = 0;
    for (size_t i = 0; i <= size && k < 3; i++) {
        if (i == size || (buf[i] == '\n' && k < 2)) {
            part[k] = buf + start;
            len[k] = i - start;
            k++;
            start = i + 1;
        }
    }
    sg_routing_t a, b;
    sg_routing_resolve(part[0], len[0], "sandgate.example.com", part[1], len[1], part[2], len[2], &a);
    sg_routing_resolve(part[0], len[0], "sandgate.example.com", part[1], len[1], part[2], len[2], &b);
    if (a.kind != b.kind || a.port != b.port || strcmp(a.sandbox_id, b.sandbox_id) != 0)
        abort();
    switch (a.kind) {
    case SG_ROUTE_SANDBOX:
        if (!sg_routing_id_valid(a.sandbox_id, strlen(a.sandbox_id)) || a.port < 1 ||
            a.port > 65535 || a.error != NULL)
            abort();
        break;
    case SG_ROUTE_ERROR:
        if (a.error == NULL || a.error[0] == '\0' || a.sandbox_id[0] != '\0')
            abort();
        break;
    case SG_ROUTE_API:
        if (a.error != NULL || a.sandbox_id[0] != '\0' || a.by_header)
            abort();
        break;
    default:
        abort();
    }
    free(buf);
    return 0;
}
