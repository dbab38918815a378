/*
 * `sandgate migrate`: applies the numbered migrations embedded from auth/migrations/.
 *
 * A session-level advisory lock serialises concurrent runs (two gateways starting at once);
 * each migration runs in its own transaction together with its row in schema_migrations, so a
 * failed migration leaves nothing half applied and a second run applies only what is missing.
 */
#include <string.h>
#include <libpq-fe.h>
#include "auth/auth.h"
#include "auth/migrations.h"

#define MIGRATE_LOCK_KEY "7403119725" /* arbitrary, fixed: sandgate's migration lock */

static int exec_ok(PGconn *c, const char *sql, FILE *err)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        fprintf(err, "migrate: %s", PQerrorMessage(c));
    PQclear(r);
    return ok ? 0 : SG_EIO;
}

int sg_auth_migrate(const char *dsn, FILE *out, FILE *err)
{
    int ret = SG_EIO, applied = 0;
    PGconn *c = PQconnectdb(dsn);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(err, "migrate: cannot connect to PostgreSQL: %s", PQerrorMessage(c));
        goto out;
    }
    PQclear(PQexec(c, "SET client_min_messages = warning"));
    if (exec_ok(c, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")", err) != 0)
        goto out;
    if (exec_ok(c,
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())",
                err) != 0)
        goto unlock;
    for (const sg_auth_migration_t *m = sg__auth_migrations; m->version; m++) {
        char ver[16];
        snprintf(ver, sizeof(ver), "%d", m->version);
        const char *p[] = {ver};
        PGresult *r = PQexecParams(c, "SELECT 1 FROM schema_migrations WHERE version = $1", 1,
                                   NULL, p, NULL, NULL, 0);
        int done = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
        int failed = PQresultStatus(r) != PGRES_TUPLES_OK;
        PQclear(r);
        if (failed) {
            fprintf(err, "migrate: %s", PQerrorMessage(c));
            goto unlock;
        }
        if (done)
            continue;
        if (exec_ok(c, "BEGIN", err) != 0)
            goto unlock;
        if (exec_ok(c, m->sql, err) != 0) {
            fprintf(err, "migrate: migration %s failed; nothing of it was applied\n", m->name);
            PQclear(PQexec(c, "ROLLBACK"));
            goto unlock;
        }
        const char *p2[] = {ver, m->name};
        r = PQexecParams(c, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", 2,
                         NULL, p2, NULL, NULL, 0);
        failed = PQresultStatus(r) != PGRES_COMMAND_OK;
        PQclear(r);
        if (failed || exec_ok(c, "COMMIT", err) != 0) {
            PQclear(PQexec(c, "ROLLBACK"));
            goto unlock;
        }
        fprintf(out, "migrate: applied %s\n", m->name);
        applied++;
    }
    if (applied == 0)
        fprintf(out, "migrate: schema up to date\n");
    ret = 0;
unlock:
    PQclear(PQexec(c, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")"));
out:
    PQfinish(c);
    return ret;
}
