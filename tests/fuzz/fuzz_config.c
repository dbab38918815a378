/*
 * Fuzz target: the bytes as a gateway config and as a node config, through the in-memory
 * loaders, then (when they load) printing and freeing. Checks beyond "no crash, no leak": the
 * error text is always NUL-terminated inside its buffer, a failed load leaves the struct zeroed,
 * and a successful one has no error text.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static FILE *devnull(void)
{
    static FILE *f;
    if (!f)
        f = fopen("/dev/null", "w");
    return f;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const sg_gateway_config_t zero_gw;
    static const sg_node_config_t zero_node;
    char err[2048];
    sg_gateway_config_t g;
    sg_node_config_t n;

    memset(err, 'x', sizeof(err));
    if (sg_config_load_gateway_buffer("fuzz.yaml", (const char *)data, size, &g, err,
                                      sizeof(err)) == 0) {
        if (err[0] != '\0')
            abort();
        if (devnull())
            sg_config_print_gateway(devnull(), &g);
        sg_config_free_gateway(&g);
    } else if (memcmp(&g, &zero_gw, sizeof(g)) != 0) {
        abort();
    }
    if (!memchr(err, '\0', sizeof(err)))
        abort();

    memset(err, 'x', sizeof(err));
    if (sg_config_load_node_buffer("fuzz.yaml", (const char *)data, size, &n, err, sizeof(err)) ==
        0) {
        if (err[0] != '\0')
            abort();
        if (devnull())
            sg_config_print_node(devnull(), &n);
        sg_config_free_node(&n);
    } else if (memcmp(&n, &zero_node, sizeof(n)) != 0) {
        abort();
    }
    if (!memchr(err, '\0', sizeof(err)))
        abort();
    return 0;
}
