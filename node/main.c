/*
 * sandgate-node: the node agent's entry point. Loads the YAML config (blocking, before any loop),
 * sets up logging and hands over to sg_node_run().
 */
#include <stdio.h>
#include <string.h>
#include "common/common.h"
#include "config/config.h"
#include "node/node.h"

#define NODE_VERSION "0.1.0"

static void usage(FILE *f)
{
    fprintf(f, "usage: sandgate-node -c CONFIG.yaml   run the node agent\n"
               "       sandgate-node -c CONFIG.yaml --check   validate and print the config\n"
               "       sandgate-node --version\n");
}

int main(int argc, char **argv)
{
    sg_http_tune_malloc();
    const char *path = NULL;
    int check = 0;
    for (int i = 1; i < argc; i++) {
        if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc) {
            path = argv[++i];
        } else if (strcmp(argv[i], "--check") == 0) {
            check = 1;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("sandgate-node %s\n", NODE_VERSION);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (path == NULL) {
        usage(stderr);
        return 2;
    }
    sg_node_config_t cfg;
    char err[4096];
    if (sg_config_load_node(path, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "sandgate-node: %s", err);
        return 1;
    }
    if (check) {
        sg_config_print_node(stdout, &cfg);
        sg_config_free_node(&cfg);
        return 0;
    }
    sg_log_level_t lvl = SG_LOG_INFO;
    sg_log_format_t fmt = SG_LOG_LOGFMT;
    if (cfg.log.level)
        sg_log_level_parse(cfg.log.level, &lvl);
    if (cfg.log.format)
        sg_log_format_parse(cfg.log.format, &fmt);
    sg_log_setup(lvl, fmt, stderr);
    int r = sg_node_run(&cfg);
    sg_config_free_node(&cfg);
    return r == 0 ? 0 : 1;
}
