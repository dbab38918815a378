/*
 * Admin commands: `sandgate team create|list|update` and `sandgate key create|list|revoke`.
 *
 * Blocking libpq on purpose: these run from the command line, never inside the gateway's loops.
 * A created key is printed once, alone on stdout (scripts capture it); only its hash is stored.
 * A team is named by its name or its uuid everywhere.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <libpq-fe.h>
#include "auth/auth.h"

#define TEAM_BY "(t.name = $1 OR t.id::text = $1)"

typedef struct {
    const char *name;
    const char *column;
} limit_opt_t;

static const limit_opt_t limit_opts[] = {
    {"--max-concurrent", "max_concurrent"},
    {"--max-timeout", "max_timeout_s"},
    {"--max-vcpu", "max_vcpu"},
    {"--max-mem-mb", "max_mem_mb"},
    {"--blocked", "blocked"},
};

static PGconn *connect_db(const char *dsn, FILE *err)
{
    PGconn *c = PQconnectdb(dsn);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(err, "cannot connect to PostgreSQL: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    return c;
}

static PGresult *run(PGconn *c, const char *sql, int n, const char *const *p, FILE *err)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, p, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        const char *detail = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
        fprintf(err, "error: %s\n", detail ? detail : PQerrorMessage(c));
        PQclear(r);
        return NULL;
    }
    return r;
}

static void print_rows(PGresult *r, FILE *out)
{
    int nf = PQnfields(r);
    for (int f = 0; f < nf; f++)
        fprintf(out, "%s%s", f ? "\t" : "", PQfname(r, f));
    fputc('\n', out);
    for (int i = 0; i < PQntuples(r); i++) {
        for (int f = 0; f < nf; f++)
            fprintf(out, "%s%s", f ? "\t" : "", PQgetisnull(r, i, f) ? "-" : PQgetvalue(r, i, f));
        fputc('\n', out);
    }
}

static const char *opt_value(int argc, char **argv, const char *name)
{
    for (int i = 0; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    return NULL;
}

/* Every "--x" must be known and have a value; positional args are counted into *npos. */
static int check_opts(int argc, char **argv, const char *const *known, int *npos, FILE *err)
{
    *npos = 0;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "--", 2) != 0) {
            (*npos)++;
            continue;
        }
        bool ok = false;
        for (const char *const *k = known; *k; k++)
            ok |= strcmp(argv[i], *k) == 0;
        if (!ok) {
            fprintf(err, "error: unknown option %s\n", argv[i]);
            return -1;
        }
        if (i + 1 >= argc) {
            fprintf(err, "error: option %s needs a value\n", argv[i]);
            return -1;
        }
        i++;
    }
    return 0;
}

static const char *first_positional(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "--", 2) == 0) {
            i++;
            continue;
        }
        return argv[i];
    }
    return NULL;
}

static const char *const team_known[] = {"--max-concurrent", "--max-timeout", "--max-vcpu",
                                         "--max-mem-mb", "--blocked", NULL};

static int team_set(PGconn *c, const char *team, int argc, char **argv, FILE *out, FILE *err)
{
    for (size_t i = 0; i < sizeof(limit_opts) / sizeof(limit_opts[0]); i++) {
        const char *v = opt_value(argc, argv, limit_opts[i].name);
        if (v == NULL)
            continue;
        char sql[256];
        snprintf(sql, sizeof(sql), "UPDATE teams t SET %s = $2 WHERE " TEAM_BY,
                 limit_opts[i].column);
        const char *p[] = {team, v};
        PGresult *r = run(c, sql, 2, p, err);
        if (r == NULL)
            return 1;
        int n = atoi(PQcmdTuples(r));
        PQclear(r);
        if (n != 1) {
            fprintf(err, "error: no team named %s\n", team);
            return 1;
        }
    }
    return 0;
}

static int team_show(PGconn *c, const char *team, FILE *out, FILE *err)
{
    const char *p[] = {team};
    PGresult *r = run(c,
                      "SELECT t.id, t.name, t.blocked, t.max_concurrent, t.max_timeout_s,"
                      " t.max_vcpu, t.max_mem_mb FROM teams t WHERE " TEAM_BY,
                      1, p, err);
    if (r == NULL)
        return 1;
    print_rows(r, out);
    PQclear(r);
    return 0;
}

int sg_auth_admin_team(const char *dsn, int argc, char **argv, FILE *out, FILE *err)
{
    int npos, ret = 1;
    if (argc < 1) {
        fprintf(err, "usage: sandgate team create NAME [--max-concurrent N] [--max-timeout S] "
                     "[--max-vcpu N] [--max-mem-mb N]\n"
                     "       sandgate team list\n"
                     "       sandgate team update NAME|ID [limits] [--blocked true|false]\n");
        return 2;
    }
    const char *verb = argv[0];
    argc--, argv++;
    if (check_opts(argc, argv, team_known, &npos, err) != 0)
        return 2;
    PGconn *c = connect_db(dsn, err);
    if (c == NULL)
        return 1;
    if (strcmp(verb, "create") == 0 && npos == 1) {
        const char *name = first_positional(argc, argv);
        const char *p[] = {name};
        PGresult *r = run(c, "INSERT INTO teams (name) VALUES ($1) RETURNING id", 1, p, err);
        if (r == NULL)
            goto out;
        PQclear(r);
        if (team_set(c, name, argc, argv, out, err) != 0)
            goto out;
        ret = team_show(c, name, out, err);
    } else if (strcmp(verb, "list") == 0 && npos == 0) {
        PGresult *r = run(c,
                          "SELECT t.id, t.name, t.blocked, t.max_concurrent, t.max_timeout_s,"
                          " t.max_vcpu, t.max_mem_mb,"
                          " (SELECT count(*) FROM api_keys k WHERE k.team_id = t.id"
                          "  AND k.revoked_at IS NULL) AS keys FROM teams t ORDER BY t.name",
                          0, NULL, err);
        if (r == NULL)
            goto out;
        print_rows(r, out);
        PQclear(r);
        ret = 0;
    } else if (strcmp(verb, "update") == 0 && npos == 1) {
        const char *name = first_positional(argc, argv);
        if (team_set(c, name, argc, argv, out, err) != 0)
            goto out;
        ret = team_show(c, name, out, err);
    } else {
        fprintf(err, "error: unknown or malformed command: team %s\n", verb);
        ret = 2;
    }
out:
    PQfinish(c);
    return ret;
}

static const char *const key_known[] = {"--team", "--name", "--expires", NULL};

/* "30d", "12h", "90m", "45s" -> an interval; anything else goes to PostgreSQL as a timestamp. */
static bool is_duration(const char *s)
{
    size_t n = strlen(s);
    if (n < 2 || !strchr("smhd", s[n - 1]))
        return false;
    for (size_t i = 0; i + 1 < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return false;
    return true;
}

int sg_auth_admin_key(const char *dsn, int argc, char **argv, FILE *out, FILE *err)
{
    int npos, ret = 1;
    if (argc < 1) {
        fprintf(err, "usage: sandgate key create --team NAME|ID [--name N] [--expires 30d|DATE]\n"
                     "       sandgate key list [--team NAME|ID]\n"
                     "       sandgate key revoke KEY_ID\n");
        return 2;
    }
    const char *verb = argv[0];
    argc--, argv++;
    if (check_opts(argc, argv, key_known, &npos, err) != 0)
        return 2;
    PGconn *c = connect_db(dsn, err);
    if (c == NULL)
        return 1;
    const char *team = opt_value(argc, argv, "--team");
    if (strcmp(verb, "create") == 0 && npos == 0 && team) {
        char key[SG_AUTH_KEY_LEN + 1], hash[65], mask[32];
        uint8_t raw[SG_AUTH_KEY_RAW];
        if (sg_auth_key_generate(key) != 0 || sg_auth_key_parse(key, SG_AUTH_KEY_LEN, raw) != 0) {
            fprintf(err, "error: no randomness available\n");
            goto out;
        }
        sg_auth_key_hash(raw, hash);
        sg_auth_key_mask(key, mask, sizeof(mask));
        const char *name = opt_value(argc, argv, "--name");
        const char *exp = opt_value(argc, argv, "--expires");
        char interval[64] = "";
        if (exp && is_duration(exp)) {
            const char *unit = strchr("s", exp[strlen(exp) - 1]) ? "seconds"
                               : exp[strlen(exp) - 1] == 'm'     ? "minutes"
                               : exp[strlen(exp) - 1] == 'h'     ? "hours"
                                                                 : "days";
            snprintf(interval, sizeof(interval), "%.*s %s", (int)strlen(exp) - 1, exp, unit);
        }
        const char *p[] = {team, hash, "e2b_", mask, name ? name : "",
                           exp && !*interval ? exp : NULL, *interval ? interval : NULL};
        PGresult *r = run(c,
                          "INSERT INTO api_keys (team_id, hash, prefix, mask, name, expires_at)"
                          " SELECT t.id, $2, $3, $4, $5,"
                          "  COALESCE($6::timestamptz, now() + $7::interval)"
                          " FROM teams t WHERE " TEAM_BY " RETURNING id, expires_at",
                          7, p, err);
        memset(raw, 0, sizeof(raw));
        if (r == NULL)
            goto out;
        if (PQntuples(r) != 1) {
            fprintf(err, "error: no team named %s\n", team);
            PQclear(r);
            goto out;
        }
        fprintf(err, "created key %s (%s) for team %s%s%s; it is shown only once:\n",
                PQgetvalue(r, 0, 0), mask, team, PQgetisnull(r, 0, 1) ? "" : ", expires ",
                PQgetisnull(r, 0, 1) ? "" : PQgetvalue(r, 0, 1));
        fprintf(out, "%s\n", key);
        memset(key, 0, sizeof(key));
        PQclear(r);
        ret = 0;
    } else if (strcmp(verb, "list") == 0 && npos == 0) {
        const char *p[] = {team};
        PGresult *r = run(c,
                          "SELECT k.id, t.name AS team, k.name, k.mask, k.created_at,"
                          " k.last_used_at, k.expires_at, k.revoked_at"
                          " FROM api_keys k JOIN teams t ON t.id = k.team_id"
                          " WHERE $1::text IS NULL OR " TEAM_BY " ORDER BY k.created_at",
                          1, p, err);
        if (r == NULL)
            goto out;
        print_rows(r, out);
        PQclear(r);
        ret = 0;
    } else if (strcmp(verb, "revoke") == 0 && npos == 1) {
        const char *p[] = {first_positional(argc, argv)};
        PGresult *r = run(c,
                          "UPDATE api_keys SET revoked_at = now() WHERE id::text = $1"
                          " AND revoked_at IS NULL RETURNING id",
                          1, p, err);
        if (r == NULL)
            goto out;
        if (PQntuples(r) != 1)
            fprintf(err, "error: no active key with id %s\n", p[0]);
        else
            fprintf(out, "revoked %s\n", p[0]), ret = 0;
        PQclear(r);
    } else {
        fprintf(err, "error: unknown or malformed command: key %s\n", verb);
        ret = 2;
    }
out:
    PQfinish(c);
    return ret;
}
