/*
 * GET /teams/me: who the API key belongs to and the team's limits. The simplest authenticated
 * route, and the example the other api_*.c files follow.
 */
#include "gateway/internal.h"

static void on_teams_me(sg_api_call_t *call)
{
    const sg_auth_identity_t *id = &call->id;
    sg_http_json(call->req, 200,
                 json_pack("{s:s,s:s,s:s,s:{s:i,s:i,s:i,s:i}}", "teamID", id->team_id, "name",
                           id->team_name, "apiKeyID", id->key_id, "limits", "maxConcurrent",
                           id->max_concurrent, "maxTimeoutSeconds", id->max_timeout_s, "maxVcpu",
                           id->max_vcpu, "maxMemoryMB", id->max_mem_mb));
}

const sg_route_t sg__routes_teams[] = {
    {"GET", "/teams/me", SG_ROUTE_KEY, on_teams_me},
    {NULL},
};
