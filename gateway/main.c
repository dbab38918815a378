/*
 * The `sandgate` command line: serve, migrate, admin commands and config checks.
 * The config file comes from --config FILE or $SANDGATE_CONFIG.
 */
#include <stdlib.h>
#include <string.h>
#include "gateway/gateway.h"
#include "gateway/internal.h"

int sg__serve(const char *config_path);

static const char usage[] =
    "usage: sandgate [--config FILE] COMMAND\n"
    "  serve                      run the gateway\n"
    "  migrate                    apply database migrations\n"
    "  team create|list|update    manage teams\n"
    "  key create|list|revoke     manage API keys\n"
    "  node list|cordon|uncordon|drain [ID]  manage nodes (placement)\n"
    "  config check FILE [--node] validate a config and print the effective values\n"
    "  config reference           print the configuration reference (Markdown)\n"
    "  version                    print the version\n"
    "The config file is --config FILE, else $SANDGATE_CONFIG.\n";

/* Removes "--config FILE" from argv; returns the file or NULL. */
static const char *take_config(int *argc, char **argv)
{
    const char *path = getenv("SANDGATE_CONFIG");
    for (int i = 1; i < *argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < *argc) {
            path = argv[i + 1];
            memmove(&argv[i], &argv[i + 2], sizeof(char *) * (size_t)(*argc - i - 2));
            *argc -= 2;
            break;
        }
    }
    return path;
}

static int with_dsn(const char *config, int (*fn)(const char *dsn, int argc, char **argv, FILE *, FILE *),
                    int argc, char **argv)
{
    static char err[8192];
    sg_gateway_config_t cfg;
    if (config == NULL) {
        fprintf(stderr, "sandgate: no config: pass --config FILE or set SANDGATE_CONFIG\n");
        return 2;
    }
    if (sg_config_load_gateway(config, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s", err);
        return 1;
    }
    int rc = fn(cfg.postgres.dsn, argc, argv, stdout, stderr);
    sg_config_free_gateway(&cfg);
    return rc;
}

static int with_config(const char *config, int argc, char **argv)
{
    static char err[8192];
    sg_gateway_config_t cfg;
    if (config == NULL) {
        fprintf(stderr, "sandgate: no config: pass --config FILE or set SANDGATE_CONFIG\n");
        return 2;
    }
    if (sg_config_load_gateway(config, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s", err);
        return 1;
    }
    int rc = sg__node_cli(&cfg, argc, argv, stdout, stderr);
    sg_config_free_gateway(&cfg);
    return rc;
}

static int do_migrate(const char *dsn, int argc, char **argv, FILE *out, FILE *err)
{
    return sg_auth_migrate(dsn, out, err) == 0 ? 0 : 1;
}

static int config_check(int argc, char **argv)
{
    static char err[16384];
    bool node = false;
    const char *path = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--node") == 0)
            node = true;
        else
            path = argv[i];
    }
    if (path == NULL) {
        fprintf(stderr, "usage: sandgate config check FILE [--node]\n");
        return 2;
    }
    if (node) {
        sg_node_config_t cfg;
        if (sg_config_load_node(path, &cfg, err, sizeof(err)) != 0) {
            fprintf(stderr, "%s", err);
            return 1;
        }
        sg_config_print_node(stdout, &cfg);
        sg_config_free_node(&cfg);
    } else {
        sg_gateway_config_t cfg;
        if (sg_config_load_gateway(path, &cfg, err, sizeof(err)) != 0) {
            fprintf(stderr, "%s", err);
            return 1;
        }
        sg_config_print_gateway(stdout, &cfg);
        sg_config_free_gateway(&cfg);
    }
    return 0;
}

int sg_gateway_main(int argc, char **argv)
{
    const char *config = take_config(&argc, argv);
    if (argc < 2) {
        fputs(usage, stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0) {
        if (config == NULL) {
            fprintf(stderr, "sandgate: no config: pass --config FILE or set SANDGATE_CONFIG\n");
            return 2;
        }
        return sg__serve(config);
    }
    if (strcmp(cmd, "migrate") == 0)
        return with_dsn(config, do_migrate, argc - 2, argv + 2);
    if (strcmp(cmd, "team") == 0)
        return with_dsn(config, sg_auth_admin_team, argc - 2, argv + 2);
    if (strcmp(cmd, "node") == 0)
        return with_config(config, argc - 2, argv + 2);
    if (strcmp(cmd, "key") == 0)
        return with_dsn(config, sg_auth_admin_key, argc - 2, argv + 2);
    if (strcmp(cmd, "config") == 0 && argc >= 3 && strcmp(argv[2], "check") == 0)
        return config_check(argc - 3, argv + 3);
    if (strcmp(cmd, "config") == 0 && argc >= 3 && strcmp(argv[2], "reference") == 0) {
        sg_config_reference_markdown(stdout);
        return 0;
    }
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("sandgate %s\n", SG_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0) {
        fputs(usage, stdout);
        return 0;
    }
    fprintf(stderr, "sandgate: unknown command %s\n%s", cmd, usage);
    return 2;
}

int main(int argc, char **argv)
{
    sg_http_tune_malloc();
    return sg_gateway_main(argc, argv);
}
