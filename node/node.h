/*
 * node: the sandbox host agent (sandgate-node).
 *
 * It runs sandboxes as OCI containers (runc), gives each one a veth on the node's bridge, serves
 * the node API and the node proxy of docs/node-api.md, and registers and heartbeats into Redis.
 * Everything runs on one libuv loop; child processes (runc, nft) are spawned with uv_spawn.
 */
#ifndef SG_NODE_H
#define SG_NODE_H

#include "config/config.h"

/* Runs the agent with cfg on the calling thread until SIGTERM/SIGINT; returns 0 on a clean stop
 * or a negative SG_E* code when start-up fails (logged). cfg must outlive the call. */
int sg_node_run(const sg_node_config_t *cfg);

#endif
