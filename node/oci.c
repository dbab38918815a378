/*
 * The OCI bundle of a sandbox: config.json (namespaces, cgroup limits, capabilities, seccomp,
 * masked paths, the read-only envd bundle at /opt/sandgate) and the files the agent writes into
 * the sandbox's root before its first process runs (/etc/hostname, /etc/hosts, the boot file).
 *
 * The request's env vars and envd access token go only into a 0400 root boot file that envd
 * reads and unlinks, never into config.json or any process environment but envd's own. Capabilities are Docker's default set minus NET_RAW (raw sockets would
 * let a sandbox forge another sandbox's source address); no CAP_SYS_ADMIN, so no mounts.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <jansson.h>
#include "common/common.h"
#include "node/internal.h"

static const char *const caps[] = {
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
    "CAP_KILL", "CAP_AUDIT_WRITE",
};

/* Denied outright: kernel modules, kexec, bpf, perf, keyrings, namespace creation, mounts. */
static const char *const denied[] = {
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "bpf",
    "perf_event_open", "userfaultfd", "open_by_handle_at", "keyctl", "add_key", "request_key",
    "acct", "swapon", "swapoff", "reboot", "syslog", "unshare", "setns", "mount", "umount2",
    "pivot_root", "fsopen", "fsmount", "move_mount", "open_tree", "fspick", "lookup_dcookie",
    "quotactl", "nfsservctl", "personality", "vm86", "vm86old", "iopl", "ioperm",
};

static const char *const masked[] = {
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
};
static const char *const readonly[] = {
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
};

static json_t *strarr(const char *const *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(v[i]));
    return a;
}
#define STRARR(v) strarr(v, sizeof(v) / sizeof(v[0]))

static json_t *mnt(const char *dst, const char *type, const char *src, const char *opts)
{
    json_t *o = json_pack("{s:s,s:s,s:s}", "destination", dst, "type", type, "source", src);
    json_t *a = json_array();
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", opts);
    for (char *save, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
        json_array_append_new(a, json_string(t));
    json_object_set_new(o, "options", a);
    return o;
}

json_t *sg__oci_config(const sg__node_t *n, const sg__sbx_t *s)
{
    /* Nothing of the request goes in here but the sizes: its env vars and envd token come in the
     * boot file, or for a warm container (started before its request is known) in envd's POST
     * /init, authenticated by a per-container key (SANDGATE_* never reaches started processes). */
    json_t *args = json_pack("[s,s,s]", "/opt/sandgate/sandgate-envd", "--port", "49983");
    json_t *envs = json_pack("[s,s,s]",
                             "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                             "HOME=/root", "LANG=C.UTF-8");
    if (s->warm) {
        char kv[64];
        snprintf(kv, sizeof(kv), "SANDGATE_INIT_KEY=%s", s->init_key);
        json_array_append_new(args, json_string("--await-init"));
        json_array_append_new(envs, json_string(kv));
    } else {
        json_array_append_new(args, json_string("--boot-file"));
        json_array_append_new(args, json_string("/run/sandgate/boot.json"));
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    json_int_t nofile = rl.rlim_max < 65536 ? (json_int_t)rl.rlim_max : 65536;
    json_t *capset = STRARR(caps);
    json_t *process = json_pack(
        "{s:b,s:{s:i,s:i},s:o,s:o,s:s,s:{s:O,s:O,s:O},s:[{s:s,s:I,s:I}],s:b,s:i}", "terminal", 0,
        "user", "uid", 0, "gid", 0, "args", args, "env", envs, "cwd", "/", "capabilities",
        "bounding", capset, "effective", capset, "permitted", capset, "rlimits", "type",
        "RLIMIT_NOFILE", "hard", nofile, "soft", nofile,
        /* Not set: no_new_privileges would disable sudo, which E2B templates promise. */
        "noNewPrivileges", 0, "oomScoreAdj", 500);
    json_decref(capset);

    json_t *mounts = json_array();
    json_array_append_new(mounts, mnt("/proc", "proc", "proc", "nosuid,noexec,nodev"));
    json_array_append_new(mounts, mnt("/dev", "tmpfs", "tmpfs", "nosuid,strictatime,mode=755,size=65536k"));
    json_array_append_new(mounts, mnt("/dev/pts", "devpts", "devpts",
                                      "nosuid,noexec,newinstance,ptmxmode=0666,mode=0620,gid=5"));
    json_array_append_new(mounts, mnt("/dev/shm", "tmpfs", "shm", "nosuid,noexec,nodev,mode=1777,size=65536k"));
    json_array_append_new(mounts, mnt("/dev/mqueue", "mqueue", "mqueue", "nosuid,noexec,nodev"));
    json_array_append_new(mounts, mnt("/sys", "sysfs", "sysfs", "nosuid,noexec,nodev,ro"));
    json_array_append_new(mounts, mnt("/sys/fs/cgroup", "cgroup", "cgroup", "nosuid,noexec,nodev,relatime,ro"));
    json_array_append_new(mounts, mnt("/opt/sandgate", "bind", n->envd_path, "rbind,ro,nosuid,nodev"));

    char cg[256];
    snprintf(cg, sizeof(cg), "%s/%s", n->cgroup_parent, s->cid);
    long long mem = (long long)s->memory_mb * 1024 * 1024;
    json_t *resources = json_pack(
        "{s:{s:I},s:{s:I,s:I},s:{s:I},s:[{s:b,s:s}]}", "memory", "limit", mem, "cpu", "quota",
        (json_int_t)s->vcpu * 100000, "period", (json_int_t)100000, "pids", "limit",
        (json_int_t)4096, "devices", "allow", 0, "access", "rwm");
    json_t *syscalls = json_array();
    json_array_append_new(syscalls, json_pack("{s:o,s:s,s:i}", "names", STRARR(denied), "action",
                                              "SCMP_ACT_ERRNO", "errnoRet", EPERM));
    /* clone3 cannot be filtered on its flags (they sit behind a pointer): ENOSYS makes libc fall
     * back to clone, whose flags can. */
    json_array_append_new(syscalls, json_pack("{s:[s],s:s,s:i}", "names", "clone3", "action",
                                              "SCMP_ACT_ERRNO", "errnoRet", ENOSYS));
    /* clone with any namespace flag: one masked-equal rule per flag (an unprivileged user
     * namespace would hand the sandbox capabilities over its own mounts and network). */
    static const json_int_t nsflags[] = {0x00020000, 0x02000000, 0x04000000, 0x08000000,
                                         0x10000000, 0x20000000, 0x40000000};
    for (size_t i = 0; i < sizeof(nsflags) / sizeof(nsflags[0]); i++)
        json_array_append_new(syscalls, json_pack("{s:[s],s:s,s:i,s:[{s:i,s:I,s:I,s:s}]}", "names",
                                                  "clone", "action", "SCMP_ACT_ERRNO", "errnoRet",
                                                  EPERM, "args", "index", 0, "value", nsflags[i],
                                                  "valueTwo", nsflags[i], "op",
                                                  "SCMP_CMP_MASKED_EQ"));
    json_t *seccomp = json_pack("{s:s,s:[s,s,s],s:o}", "defaultAction", "SCMP_ACT_ALLOW",
                                "architectures", "SCMP_ARCH_X86_64", "SCMP_ARCH_X86",
                                "SCMP_ARCH_X32", "syscalls", syscalls);
    json_t *linux_ = json_pack(
        "{s:[{s:s},{s:s},{s:s},{s:s},{s:s}],s:s,s:o,s:o,s:o,s:o}", "namespaces", "type", "pid",
        "type", "network", "type", "ipc", "type", "uts", "type", "mount", "cgroupsPath", cg,
        "resources", resources, "maskedPaths", STRARR(masked), "readonlyPaths", STRARR(readonly),
        "seccomp", seccomp);
    return json_pack("{s:s,s:o,s:{s:s,s:b},s:s,s:o,s:o}", "ociVersion", "1.0.2", "process",
                     process, "root", "path", "rootfs", "readonly", 0, "hostname", s->id,
                     "mounts", mounts, "linux", linux_);
}

static int write_file(const char *path, const char *data, size_t len, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0)
        return SG_EIO;
    ssize_t w = write(fd, data, len);
    int ret = w == (ssize_t)len && fchmod(fd, mode) == 0 ? 0 : SG_EIO;
    close(fd);
    return ret;
}

/* Writes the per-sandbox files under root: the upper layer before the overlay is mounted, or the
 * mounted root of a pre-created container before its first process runs. */
int sg__oci_write_files(const sg__sbx_t *s, const char *root, const char *boot)
{
    char p[4096], buf[512];
    snprintf(p, sizeof(p), "%s/etc", root);
    if (mkdir(p, 0755) != 0 && errno != EEXIST)
        return SG_EIO;
    snprintf(p, sizeof(p), "%s/etc/hostname", root);
    int len = snprintf(buf, sizeof(buf), "%s\n", s->id);
    if (write_file(p, buf, (size_t)len, 0644) != 0)
        return SG_EIO;
    snprintf(p, sizeof(p), "%s/etc/hosts", root);
    len = snprintf(buf, sizeof(buf),
                   "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                   "127.0.1.1\t%s\n%s\t%s\n", s->id, s->addr, s->id);
    if (write_file(p, buf, (size_t)len, 0644) != 0)
        return SG_EIO;
    /* The host's resolver, so sandboxes with internet access can resolve names. */
    FILE *f = fopen("/etc/resolv.conf", "re");
    if (f != NULL) {
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        snprintf(p, sizeof(p), "%s/etc/resolv.conf", root);
        if (strstr((buf[n] = '\0', buf), "127.0.0.") == NULL)
            write_file(p, buf, n, 0644);
    }
    if (boot != NULL) {
        snprintf(p, sizeof(p), "%s/run", root);
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            return SG_EIO;
        snprintf(p, sizeof(p), "%s/run/sandgate", root);
        if (mkdir(p, 0700) != 0 && errno != EEXIST)
            return SG_EIO;
        snprintf(p, sizeof(p), "%s/run/sandgate/boot.json", root);
        if (write_file(p, boot, strlen(boot), 0400) != 0)
            return SG_EIO;
    }
    return 0;
}
