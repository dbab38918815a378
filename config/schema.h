/*
 * config (private): the schema table types shared by the loader (config.c) and the tables
 * (schema.c). Not part of the module's public API: only config/ includes this.
 */
#ifndef SG_CONFIG_SCHEMA_H
#define SG_CONFIG_SCHEMA_H

#include <yaml.h>

#include "config/config.h"

typedef enum {
    SG__T_STR,     /* char *, strdup'd */
    SG__T_INT,     /* int */
    SG__T_DBL,     /* double */
    SG__T_BOOL,    /* bool */
    SG__T_SIZE,    /* size_t, "10MB"/"1GiB"/plain */
    SG__T_ENUM,    /* char *, one of enums[] */
    SG__T_SECTION, /* nested struct at off, fields in sub */
    SG__T_LIST,    /* inline array of elem_size structs at off, count (size_t) at count_off */
    SG__T_STRLIST, /* char ** at off (malloc'd array of strdup'd strings), count at count_off */
    SG__T_STRMAP,  /* inline sg_config_kv_t array at off, count at count_off */
} sg__ftype_t;

#define SG__F_SECRET 1u   /* masked when printed; may be given as <name>_file */
#define SG__F_REQUIRED 2u /* no default: must be given (strings: and non-empty) */

typedef struct sg__cfg_ctx sg__cfg_ctx_t;

typedef struct sg__field {
    const char *name; /* NULL terminates a table; the terminator's post runs after the walk */
    sg__ftype_t type;
    size_t off;
    const char *def; /* default as text, converted like input; NULL = none */
    double min, max; /* numbers and sizes: range; strings: minimum length; lists: min entries */
    const char *const *enums; /* NULL-terminated, SG__T_ENUM only */
    unsigned flags;
    const char *doc;
    const struct sg__field *sub; /* SECTION, LIST */
    size_t count_off, elem_size, max_items; /* LIST, STRLIST, STRMAP */
    /* extra validation of a string (or list item, or map key): NULL if fine, else why not */
    const char *(*check)(const char *s);
    /* terminator only: cross-field checks of a section, given its base and mapping (may be NULL) */
    void (*post)(sg__cfg_ctx_t *c, void *base, yaml_node_t *map, yaml_mark_t pos,
                 const char *path);
} sg__field_t;

extern const sg__field_t sg__cfg_gateway_schema[];
extern const sg__field_t sg__cfg_node_schema[];

/* Appends one "file:line:col: path: message" line to the context's error buffer. */
void sg__cfg_error(sg__cfg_ctx_t *c, yaml_mark_t m, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The value node of key in mapping map, or NULL. */
yaml_node_t *sg__cfg_find(sg__cfg_ctx_t *c, yaml_node_t *map, const char *key);
/* Item i of sequence seq, or NULL. */
yaml_node_t *sg__cfg_item(sg__cfg_ctx_t *c, yaml_node_t *seq, size_t i);
/* Reads a regular file of at most max bytes into a malloc'd NUL-terminated buffer. Returns 0,
 * SG_EIO (errno set), SG_ETOOBIG or SG_ENOMEM. */
int sg__cfg_read_file(const char *path, size_t max, char **out, size_t *outlen);

#endif
