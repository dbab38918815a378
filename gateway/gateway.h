/*
 * gateway: the `sandgate` binary: the E2B-compatible API and edge, plus its admin commands.
 */
#ifndef SG_GATEWAY_H
#define SG_GATEWAY_H

/* Runs the command line (serve, migrate, team, key, node, config). Returns the exit code. */
int sg_gateway_main(int argc, char **argv);

#endif
