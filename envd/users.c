/*
 * Users and identities without NSS.
 *
 * envd ships its own glibc inside the bundle; NSS would make that glibc dlopen the rootfs's
 * libnss_* modules (built against another glibc), so users and groups are read straight from
 * /etc/passwd and /etc/group with fgetpwent/fgetgrent, which never touch NSS. The files are small
 * and local, and re-read on each call so users added inside the sandbox are seen at once.
 *
 * Filesystem operations done on behalf of a user run on the loop thread with that thread's
 * fsuid/fsgid/groups switched (raw syscalls: glibc's setgroups() would apply to every thread).
 * The kernel drops the DAC-override capabilities while fsuid != 0, so permissions are checked
 * exactly as for the user; switching back to 0 restores them.
 */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/fsuid.h>
#include <sys/syscall.h>
#include "common/common.h"
#include "envd/internal.h"

#define IDMAP_MAX 65536

int sg__user_lookup(const char *name, sg__user_t *u)
{
    FILE *f = fopen("/etc/passwd", "re");
    if (f == NULL)
        return SG_EIO;
    struct passwd *pw;
    int ret = SG_ENOTFOUND;
    while ((pw = fgetpwent(f)) != NULL) {
        if (strcmp(pw->pw_name, name) != 0)
            continue;
        memset(u, 0, sizeof(*u));
        snprintf(u->name, sizeof(u->name), "%s", pw->pw_name);
        u->uid = pw->pw_uid;
        u->gid = pw->pw_gid;
        snprintf(u->home, sizeof(u->home), "%s", pw->pw_dir && *pw->pw_dir ? pw->pw_dir : "/");
        snprintf(u->shell, sizeof(u->shell), "%s",
                 pw->pw_shell && *pw->pw_shell ? pw->pw_shell : "/bin/sh");
        ret = 0;
        break;
    }
    fclose(f);
    if (ret != 0)
        return ret;
    u->groups[u->ngroups++] = u->gid;
    f = fopen("/etc/group", "re");
    if (f == NULL)
        return 0; /* no group file: the primary group only */
    struct group *gr;
    while ((gr = fgetgrent(f)) != NULL && u->ngroups < SG__MAX_GROUPS) {
        if (gr->gr_gid == u->gid)
            continue;
        for (char **m = gr->gr_mem; m && *m; m++) {
            if (strcmp(*m, u->name) == 0) {
                u->groups[u->ngroups++] = gr->gr_gid;
                break;
            }
        }
    }
    fclose(f);
    return 0;
}

void sg__as_user(const sg__user_t *u)
{
    syscall(SYS_setgroups, (size_t)u->ngroups, u->groups);
    setfsgid(u->gid);
    setfsuid(u->uid);
}

void sg__as_root(void)
{
    setfsuid(0);
    setfsgid(0);
    syscall(SYS_setgroups, (size_t)0, NULL);
}

void sg__idmap_load(sg__idmap_t *m)
{
    memset(m, 0, sizeof(*m));
    FILE *f = fopen("/etc/passwd", "re");
    size_t cap = 0;
    if (f) {
        struct passwd *pw;
        while ((pw = fgetpwent(f)) != NULL && m->nusers < IDMAP_MAX) {
            if (m->nusers == cap) {
                cap = cap ? cap * 2 : 64;
                void *n = realloc(m->users, cap * sizeof(*m->users));
                if (n == NULL)
                    break;
                m->users = n;
            }
            m->users[m->nusers].id = pw->pw_uid;
            m->users[m->nusers].name = strdup(pw->pw_name);
            if (m->users[m->nusers].name)
                m->nusers++;
        }
        fclose(f);
    }
    f = fopen("/etc/group", "re");
    cap = 0;
    if (f) {
        struct group *gr;
        while ((gr = fgetgrent(f)) != NULL && m->ngroups < IDMAP_MAX) {
            if (m->ngroups == cap) {
                cap = cap ? cap * 2 : 64;
                void *n = realloc(m->groups, cap * sizeof(*m->groups));
                if (n == NULL)
                    break;
                m->groups = n;
            }
            m->groups[m->ngroups].id = gr->gr_gid;
            m->groups[m->ngroups].name = strdup(gr->gr_name);
            if (m->groups[m->ngroups].name)
                m->ngroups++;
        }
        fclose(f);
    }
}

void sg__idmap_free(sg__idmap_t *m)
{
    for (size_t i = 0; i < m->nusers; i++)
        free(m->users[i].name);
    for (size_t i = 0; i < m->ngroups; i++)
        free(m->groups[i].name);
    free(m->users);
    free(m->groups);
    memset(m, 0, sizeof(*m));
}

const char *sg__idmap_user(const sg__idmap_t *m, unsigned uid, char *buf)
{
    for (size_t i = 0; i < m->nusers; i++)
        if (m->users[i].id == uid)
            return m->users[i].name;
    snprintf(buf, 16, "%u", uid);
    return buf;
}

const char *sg__idmap_group(const sg__idmap_t *m, unsigned gid, char *buf)
{
    for (size_t i = 0; i < m->ngroups; i++)
        if (m->groups[i].id == gid)
            return m->groups[i].name;
    snprintf(buf, 16, "%u", gid);
    return buf;
}
