/* Private to auth/: the embedded migration table (generated). */
#ifndef SG_AUTH_MIGRATIONS_H
#define SG_AUTH_MIGRATIONS_H
typedef struct {
    int version;
    const char *name;
    const char *sql;
} sg_auth_migration_t;
/* Sorted by version, terminated by {0}. */
extern const sg_auth_migration_t sg__auth_migrations[];
#endif
