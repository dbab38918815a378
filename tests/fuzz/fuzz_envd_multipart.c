/*
 * Fuzz target: the multipart/form-data parser of POST /files. The first line of the input is
 * the Content-Type header value, the rest the body. Checks beyond "no crash": every part's data
 * lies inside the body, and filenames are NUL-terminated inside their buffer.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "common/common.h"
#include "envd/envd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    if (nl == NULL)
        return 0;
    const char *b;
    size_t blen;
    if (sg_envd_multipart_boundary((const char *)data, (size_t)(nl - data), &b, &blen) != 0)
        return 0;
    const uint8_t *body = nl + 1;
    size_t len = size - (size_t)(body - data);
    static sg_envd_part_t parts[8];
    size_t n = 0;
    if (sg_envd_multipart_parse(body, len, b, blen, parts, 8, &n) == 0) {
        if (n == 0 || n > 8)
            abort();
        for (size_t i = 0; i < n; i++) {
            if (parts[i].data < body || parts[i].data + parts[i].len > body + len)
                abort();
            if (memchr(parts[i].filename, '\0', sizeof(parts[i].filename)) == NULL)
                abort();
        }
    }
    return 0;
}
