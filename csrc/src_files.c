/* src_files.c: energy counters read from files and from the perf power PMU.
 *
 * Every source here opens once (at setup) and reads with pread on the kept fd, so that a read
 * is one syscall. The value stored is the raw counter times its scale, in joules; wraparound
 * is left to the Python side, which knows each counter's range. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/perf_event.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

/* The longest text a counter may hold: 20 digits (2^64 - 1) and a newline. */
#define TEXT_COUNTER_MAX 21

/* powercap energy_uj and the like: an unsigned decimal number in a small text file, digits
 * only, with at most a trailing newline. Anything else is refused as not a number, never
 * read as one: strtoull alone would take a sign ("-5" as 2^64 - 5), a "+", leading blanks,
 * and a file longer than the buffer would be cut to its first digits. */
static int read_text(aipm_engine *e, aipm_channel *c, uint32_t id, double *value, int32_t *err) {
    char buf[TEXT_COUNTER_MAX + 2]; /* one byte more than a number can hold tells a longer file */
    ssize_t n = pread(c->fd, buf, sizeof buf - 1, 0);
    if (n < 0) {
        *err = errno;
        return AIPM_EREAD;
    }
    if (n > 0 && buf[n - 1] == '\n') n--;
    if (n == 0 || n > TEXT_COUNTER_MAX - 1) {
        *err = EINVAL;
        return AIPM_EPARSE;
    }
    unsigned long long raw = 0;
    for (ssize_t i = 0; i < n; i++) {
        unsigned d = (unsigned)(buf[i] - '0');
        if (d > 9 || raw > (ULLONG_MAX - d) / 10) { /* not a digit, or past 2^64 - 1 */
            *err = EINVAL;
            return AIPM_EPARSE;
        }
        raw = raw * 10 + d;
    }
    *value = (double)raw * c->scale;
    return AIPM_OK;
}

/* A sysfs file that disappears keeps answering through an open fd on some file systems;
 * the link count tells that it is gone. */
static int32_t text_gone(const aipm_channel *c) {
    struct stat st;
    if (fstat(c->fd, &st) != 0) return errno;
    return st.st_nlink > 0 ? 0 : ENOENT;
}

/* RAPL through the msr driver: the register's low 32 bits are the energy status counter. */
static int read_msr(aipm_engine *e, aipm_channel *c, uint32_t id, double *value, int32_t *err) {
    uint64_t raw = 0;
    ssize_t n = pread(c->fd, &raw, sizeof raw, (off_t)c->reg);
    if (n != (ssize_t)sizeof raw) {
        *err = n < 0 ? errno : EIO;
        return AIPM_EREAD;
    }
    *value = (double)(raw & 0xffffffffULL) * c->scale;
    return AIPM_OK;
}

static int read_perf(aipm_engine *e, aipm_channel *c, uint32_t id, double *value, int32_t *err) {
    uint64_t count = 0;
    ssize_t n = read(c->fd, &count, sizeof count);
    if (n != (ssize_t)sizeof count) {
        *err = n < 0 ? errno : EIO;
        return AIPM_EREAD;
    }
    *value = (double)count * c->scale;
    return AIPM_OK;
}

static void close_fd(aipm_channel *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

static const channel_ops text_ops = {.read = read_text, .gone = text_gone, .release = close_fd};
static const channel_ops msr_ops = {.read = read_msr, .release = close_fd};
static const channel_ops perf_ops = {.read = read_perf, .release = close_fd};

/* Finish a setup: a first read must succeed, then the channel is committed. */
static int commit_after_first_read(aipm_engine *e, aipm_channel *c, const char *what) {
    int32_t err = 0;
    int rc = c->ops->read(e, c, e->n_channels, &c->value, &err);
    if (rc != AIPM_OK) {
        close_fd(c);
        return engine_fail(e, rc, rc == AIPM_EPARSE ? 0 : err, "first read of %s: %s", what,
                           rc == AIPM_EPARSE ? "not a number" : strerror(err));
    }
    return engine_commit_channel(e);
}

/* What a file must be to be read: a text counter a regular file (sysfs attributes are), an
 * MSR a regular file or the msr driver's character device. A FIFO or a socket would block the
 * first read, and with it discovery, forever: it is opened without blocking and refused. */
static const char *not_readable_kind(mode_t mode, int char_device_ok) {
    if (S_ISREG(mode) || (char_device_ok && S_ISCHR(mode))) return NULL;
    if (S_ISFIFO(mode)) return "a FIFO";
    if (S_ISSOCK(mode)) return "a socket";
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    return "not a regular file";
}

static int add_file(aipm_engine *e, const channel_ops *ops, const char *path, uint64_t reg,
                    double scale, int64_t period_ns) {
    aipm_channel *c = engine_new_channel(e, ops, period_ns);
    if (!c) return AIPM_ESTATE;
    c->scale = scale;
    c->reg = reg;
    c->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (c->fd < 0) {
        int err = errno;
        return engine_fail(e, AIPM_EOPEN, err, "open(%s): %s", path, strerror(err));
    }
    struct stat st;
    if (fstat(c->fd, &st) != 0) {
        int err = errno;
        close_fd(c);
        return engine_fail(e, AIPM_EOPEN, err, "fstat(%s): %s", path, strerror(err));
    }
    const char *kind = not_readable_kind(st.st_mode, ops == &msr_ops);
    if (kind) {
        close_fd(c);
        return engine_fail(e, AIPM_EOPEN, EINVAL, "open(%s): %s, not a file that can be read as a counter",
                           path, kind);
    }
    return commit_after_first_read(e, c, path);
}

int aipm_add_text_counter(aipm_engine *e, const char *path, double scale, int64_t period_ns) {
    return add_file(e, &text_ops, path, 0, scale, period_ns);
}

int aipm_add_msr_counter(aipm_engine *e, const char *path, uint64_t reg, double scale,
                         int64_t period_ns) {
    return add_file(e, &msr_ops, path, reg, scale, period_ns);
}

int aipm_add_perf_counter(aipm_engine *e, uint32_t type, uint64_t config, int cpu, double scale,
                          int64_t period_ns) {
    aipm_channel *c = engine_new_channel(e, &perf_ops, period_ns);
    if (!c) return AIPM_ESTATE;
    c->scale = scale;
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.size = sizeof attr;
    attr.type = type;
    attr.config = config;
    long fd = syscall(SYS_perf_event_open, &attr, -1 /* any pid */, cpu, -1, PERF_FLAG_FD_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        return engine_fail(e, AIPM_EOPEN, err, "perf_event_open(type=%u, config=0x%llx, cpu=%d): %s",
                           type, (unsigned long long)config, cpu, strerror(err));
    }
    c->fd = (int)fd;
    return commit_after_first_read(e, c, "perf event");
}
