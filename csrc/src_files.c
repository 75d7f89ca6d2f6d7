/* src_files.c: energy counters read from files and from the perf power PMU.
 *
 * Every source here opens once (at setup) and reads with pread on the kept fd, so that a read
 * is one syscall. The value stored is the raw counter times its scale, in joules; wraparound
 * is left to the Python side, which knows each counter's range. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

/* powercap energy_uj and the like: a decimal number in a small text file. */
int source_read_text(aipm_channel *c, double *value, int32_t *err) {
    char buf[64];
    ssize_t n = pread(c->fd, buf, sizeof buf - 1, 0);
    if (n < 0) {
        *err = errno;
        return AIPM_EREAD;
    }
    buf[n] = '\0';
    char *end = NULL;
    errno = 0;
    unsigned long long raw = strtoull(buf, &end, 10);
    if (end == buf || errno != 0 || (*end != '\0' && *end != '\n')) {
        *err = EINVAL;
        return AIPM_EPARSE;
    }
    *value = (double)raw * c->scale;
    return AIPM_OK;
}

/* A sysfs file that disappears keeps answering through an open fd on some file systems;
 * the link count tells that it is gone. Checked at heartbeat rate, not on every read. */
int source_text_still_linked(aipm_channel *c) {
    struct stat st;
    if (fstat(c->fd, &st) != 0) return 0;
    return st.st_nlink > 0;
}

/* RAPL through the msr driver: the register's low 32 bits are the energy status counter. */
int source_read_msr(aipm_channel *c, double *value, int32_t *err) {
    uint64_t raw = 0;
    ssize_t n = pread(c->fd, &raw, sizeof raw, (off_t)c->reg);
    if (n != (ssize_t)sizeof raw) {
        *err = n < 0 ? errno : EIO;
        return AIPM_EREAD;
    }
    *value = (double)(raw & 0xffffffffULL) * c->scale;
    return AIPM_OK;
}

int source_read_perf(aipm_channel *c, double *value, int32_t *err) {
    uint64_t count = 0;
    ssize_t n = read(c->fd, &count, sizeof count);
    if (n != (ssize_t)sizeof count) {
        *err = n < 0 ? errno : EIO;
        return AIPM_EREAD;
    }
    *value = (double)count * c->scale;
    return AIPM_OK;
}

int open_text_counter(aipm_engine *e, aipm_channel *c, const char *path) {
    c->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (c->fd < 0) {
        engine_set_error(e, "open(%s): %s", path, strerror(errno));
        return AIPM_EOPEN;
    }
    return AIPM_OK;
}

int open_msr(aipm_engine *e, aipm_channel *c, const char *path) {
    c->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (c->fd < 0) {
        engine_set_error(e, "open(%s): %s", path, strerror(errno));
        return AIPM_EOPEN;
    }
    return AIPM_OK;
}

int open_perf(aipm_engine *e, aipm_channel *c, uint32_t type, uint64_t config, int cpu) {
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.size = sizeof attr;
    attr.type = type;
    attr.config = config;
    long fd = syscall(SYS_perf_event_open, &attr, -1 /* any pid */, cpu, -1, PERF_FLAG_FD_CLOEXEC);
    if (fd < 0) {
        engine_set_error(e, "perf_event_open(type=%u, config=0x%llx, cpu=%d): %s", type,
                         (unsigned long long)config, cpu, strerror(errno));
        return AIPM_EOPEN;
    }
    c->fd = (int)fd;
    return AIPM_OK;
}
